"""
Registers C{twistd sipproxy}, the sipleg stateless forwarding proxy.
"""

from twisted.application.service import ServiceMaker

sipproxy = ServiceMaker(
    "sipleg SIP proxy",
    "sipleg.tap",
    "A stateless SIP forwarding proxy over UDP, TCP and TLS legs.",
    "sipproxy",
)
