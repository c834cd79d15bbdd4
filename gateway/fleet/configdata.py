"""The gateway's attributes sent to the fleet server (``PUT configData``): when they changed, or
when the server asks; not again once the server refused them as they are."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from gateway.fleet.ddi import DDIClient, DDIError, refused_for_good
from gateway.fleet.state import FleetState


class ConfigDataSender:
    """Sends one gateway's ``configData``.

    :param state: the fleet state in force (``config_hash``, ``sw_version``).
    :param extra: ``fleet.attributes`` (they win over the gateway's own).
    :param attributes: the gateway's attributes (strings only).
    :param ddi: the DDI client.
    :param save: persists the state; fires once written.
    :param noted_error: notes the cause of attributes refused for good (the snapshot's last error).
    :param log: the service's logger (its lines keep the service's namespace).
    """

    def __init__(self, state: Callable[[], FleetState], extra: dict[str, str],
                 attributes: Callable[[], dict[str, str]], ddi: DDIClient, save: Callable[[], Deferred[Any]],
                 noted_error: Callable[[str], None], log: Logger) -> None:
        self.state = state
        self.extra = extra
        self.attributes = attributes
        self.ddi = ddi
        self.save = save
        self.noted_error = noted_error
        self.log = log
        self._refused = ""  # the digest of attributes the server refused as they are

    @inlineCallbacks
    def send(self, asked: bool) -> Any:
        """Send the attributes when the server asks (``asked``: it linked ``configData``) or when
        they differ from those it took or refused last.

        :raises DDIError: when the request failed but for a refusal for good (the poll fails).
        """
        state = self.state()
        attributes = {**{str(k): str(v) for k, v in self.attributes().items()}, **self.extra}
        if state.sw_version:
            attributes["sw_version"] = state.sw_version
        digest = hashlib.sha256(json.dumps(attributes, sort_keys=True).encode()).hexdigest()
        if not asked and digest in (state.config_hash, self._refused):
            return
        try:
            yield self.ddi.put_config_data(attributes)
        except DDIError as error:
            if not refused_for_good(error):
                raise  # the server, the token or the way to it: the poll failed and is tried again
            # refused as it is (hawkBit: a value over 128 characters): sending it again changes
            # nothing, and failing the poll would keep every deployment from this device
            self._refused = digest
            self.noted_error(str(error))  # (on the read side too, as feedback refused for good)
            self.log.warn("fleet configData refused, not sent again until the attributes change or the "
                          "server asks: {error}", error=str(error))
            return
        self.state().config_hash = digest
        yield self.save()
        self.log.info("fleet configData sent ({count} attributes)", count=len(attributes))
