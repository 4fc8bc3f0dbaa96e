"""The pure domain: customer state, features, rules, changes and playbooks (no I/O, no clock)."""
