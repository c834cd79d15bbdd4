"""The gateway's trial suite. Library logging (amqtt) goes to trial's log, not the terminal."""

from gateway import logbridge

logbridge.install("info")
