"""twistd plugin: ``twistd gateway`` runs :mod:`gateway.tap` (imported lazily)."""

from twisted.application.service import ServiceMaker

gateway = ServiceMaker("gateway", "gateway.tap", "Event-driven IoT gateway", "gateway")
