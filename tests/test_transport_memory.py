"""
Tests for L{sipleg.transport.memory}.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from sipleg.address import Address
from sipleg.leg import Leg
from sipleg.transport.base import ISocketPool
from sipleg.transport.memory import MemorySocketPool
from tests.collector import PacketCollector, options


class MemorySocketPoolTests(TestCase):
    def test_interface(self) -> None:
        self.assertTrue(verifyObject(ISocketPool, MemorySocketPool(Address("127.0.0.1", 5060))))

    def test_a_leg_on_it(self) -> None:
        pool = MemorySocketPool(Address("127.0.0.1", 5060))
        got = PacketCollector()
        leg = Leg(socketpool=pool, receiver=got)
        self.assertEqual(self.successResultOf(leg.listen()), leg)
        self.assertIsNone(self.successResultOf(leg.deliver(options("sip:x@127.0.0.2"), "127.0.0.2:5070")))
        ((data, dst),) = pool.sent
        self.assertTrue(
            data.startswith(b"OPTIONS sip:x@127.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;")
        )
        self.assertEqual(dst, Address("127.0.0.2", 5070))
        pool.deliver(data, Address("127.0.0.1", 5099))
        self.assertEqual([m.get_header("call-id") for m in got.messages()], ["opt-1@127.0.0.1"])
        self.assertEqual(pool.connections(), [])
        self.assertIsNone(self.successResultOf(leg.stop()))
