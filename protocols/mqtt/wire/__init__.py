"""MQTT 3.1.1 / 5.0 on the wire, sans-io and standard library only.

* :mod:`.packets`: the packets as plain immutable data (what every other module speaks);
* :mod:`.codec`: bytes <-> packets, made of :mod:`.properties` (the property table and the
  primitive fields), :mod:`.decoder`, :mod:`.encoder` and :mod:`.prepared` (a PUBLISH encoded
  once for many subscribers);
* :mod:`.connection`: one connection's protocol state machine (bytes and clock values in,
  events and bytes out), tested without sockets;
* :mod:`.fastinit`: faster construction of the frozen packets on the per-publish path.

Nothing here imports the bridge or asyncio, so the codec and the state machine can be fuzzed
and tested with bytes alone (as h11 does for HTTP).
"""
