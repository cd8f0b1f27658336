"""
Interop peers for sipleg's proxy tests: real SIPp and Perl Net::SIP user
agents started and judged from Twisted tests (see L{tests.interop.peers} and
README.md in this directory).
"""
