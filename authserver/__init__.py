"""authserver: the token gateway between MQTT devices and the cloud MQTT token API."""

__version__ = "0.1.0"
