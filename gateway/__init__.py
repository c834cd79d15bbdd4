"""An event-driven IoT gateway on Twisted: local MQTT broker, disk journal, cloud links."""

__version__ = "0.1.0"
