"""The file descriptors kept from clients (gateway.fdreserve), with the limit and the lowest
free descriptor injected, and once on this process's own."""

from __future__ import annotations

import errno
import os
import resource

from twisted.trial.unittest import SynchronousTestCase

from gateway.fdreserve import RESERVE_MAX, DescriptorReserve, lowest_free, reserve_for, soft_limit


def raising(number: int) -> int:
    """A lowest free descriptor that cannot be had: ``OSError(number)``."""
    raise OSError(number, os.strerror(number))


class ReserveTests(SynchronousTestCase):
    def test_an_eighth_of_the_limit_at_most_1024(self) -> None:
        """The reserve is an eighth of the limit, at most 1024: 16 of 128, 128 of 1024 (a
        shell's default), 1024 of the .deb's 65536."""
        self.assertEqual([reserve_for(limit) for limit in (128, 1024, 8192, 65536)], [16, 128, 1024, RESERVE_MAX])

    def test_short_once_the_lowest_free_descriptor_is_in_the_reserve(self) -> None:
        """Under a limit of 128, a connection is closed once the lowest free descriptor is 112
        or more (all below it are taken: only the reserve is left), or when none is free; it
        stays while one below 112 is free."""
        for lowest, short in ((5, None), (111, None), (112, (16, 128)), (127, (16, 128))):
            self.assertEqual(DescriptorReserve(lambda: 128, lambda: lowest).short(), short, lowest)
        for number in (errno.EMFILE, errno.ENFILE):
            self.assertEqual(DescriptorReserve(lambda: 128, lambda: raising(number)).short(), (16, 128))

    def test_nothing_kept_when_it_cannot_be_told(self) -> None:
        """No limit (-1), or no ``/dev/null`` to probe with: connections are taken as before."""
        self.assertIsNone(DescriptorReserve(lambda: -1, lambda: 10**6).short())
        self.assertIsNone(DescriptorReserve(lambda: 128, lambda: raising(errno.ENOENT)).short())

    def test_this_process(self) -> None:
        """The real limit is RLIMIT_NOFILE's soft value, and the lowest free descriptor is one
        that a new file gets."""
        self.assertEqual(soft_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        lowest = lowest_free()
        opened = os.open(os.devnull, os.O_RDONLY)
        self.addCleanup(os.close, opened)
        self.assertEqual(opened, lowest)
