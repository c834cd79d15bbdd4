"""The gateway's error hierarchy: one root, precise subclasses."""


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid; ``errors`` lists every problem found.

    :param errors: one line per problem, each ``file: key.path: what is wrong``.
    """

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)


class ReactorError(GatewayError):
    """The installed Twisted reactor cannot host the gateway."""


class BrokerError(GatewayError):
    """The local MQTT broker failed to start or to serve."""


class JournalError(GatewayError):
    """The disk journal could not store or read records."""


class AppError(GatewayError):
    """A hosted application could not be installed, started or stopped."""


class UpdateError(GatewayError):
    """An over-the-air update or download failed."""


class LinkError(GatewayError):
    """A cloud link failed."""


class ConfigKeyError(GatewayError, KeyError):
    """A dotted configuration key path names nothing in the configuration."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no such key"


class ConfigCheckError(GatewayError):
    """A configuration change could not be checked: its trial load could not be set up (a
    full or read-only temporary directory, a configuration file that cannot be copied), so
    nothing was changed."""


class ConfigApplyConflict(GatewayError):
    """A configuration change is being applied or waits for confirmation: one at a time."""


class ServiceStillStopping(GatewayError):
    """A restart would start a service beside the old one, still stopping past its timeout."""


class ConfigRevertError(GatewayError):
    """A configuration change whose confirm deadline passed while the gateway was stopped
    cannot be reverted at start (its previous drop-in cannot be restored): the gateway does
    not start on the unconfirmed configuration."""
