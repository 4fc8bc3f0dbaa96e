"""The scorer: consume events -> fold into per-customer state -> classify -> outbox -> publish."""
