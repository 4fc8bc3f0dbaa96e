"""The actions service: tier changes -> playbooks -> tasks, deliveries and sequences."""
