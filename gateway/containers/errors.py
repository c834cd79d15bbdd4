"""Errors of the containers package, all under :class:`gateway.errors.AppError`."""

from gateway.errors import AppError


class DescriptionError(AppError):
    """A container description is malformed; the message names every problem."""


class RuntimeFailure(AppError):
    """The container runtime refused or failed a request (the message is the runtime's)."""


class RuntimeUnavailable(RuntimeFailure):
    """The runtime's socket does not answer."""


class NotFound(RuntimeFailure):
    """The runtime has no such container or image."""


class ImageError(AppError):
    """An image could not be pulled or loaded (unknown reference, registry down, bad digest).

    :param brought: the ids of the images the failed load brought into the runtime all the same
        (an archive that does not hold the image named): the gateway's to delete.
    """

    def __init__(self, message: str, brought: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.brought = brought
