"""
Registers C{twistd idle}: a service that does nothing, the baseline of
C{bench/idle_rss.py} (the memory and modules of C{twistd -n} itself).
"""

from __future__ import annotations

from twisted.application.service import IService, IServiceMaker, Service
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


@implementer(IServiceMaker, IPlugin)
class IdleMaker:
    tapname = "idle"
    description = "A service that does nothing (bench/idle_rss.py baseline)."
    options = usage.Options

    def makeService(self, options: usage.Options) -> IService:
        return Service()


idle = IdleMaker()
