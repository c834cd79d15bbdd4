"""The one MQTT 3.1.1 codec of the gateway, used by the broker and the cloud links alike.

- :mod:`gateway.mqtt.packets`: packet types, the :class:`~gateway.mqtt.packets.Packet`
  both sides decode into, and every encoder (CONNECT, PUBLISH, the acknowledgements,
  SUBSCRIBE, ...).
- :mod:`gateway.mqtt.framing`: incremental splitting of a byte stream into packets: a
  server's view of a client (:class:`~gateway.mqtt.framing.PacketFramer`) and a client's
  view of a server (:class:`~gateway.mqtt.framing.PacketReader`).
- :mod:`gateway.mqtt.validation`: the rules for what a client sends (§1.5.3, §3.1-§3.14).
- :mod:`gateway.mqtt.topics`: topic names, filters and matching (§4.7).
- :mod:`gateway.mqtt.errors`: :class:`~gateway.mqtt.errors.ProtocolViolation` (a client
  broke the protocol) and :class:`~gateway.mqtt.errors.MalformedPacket` (a server did).
"""
