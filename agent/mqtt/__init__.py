"""Publishing verdicts to PLCs and SCADA over MQTT, with a durable outbox."""
