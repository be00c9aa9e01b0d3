"""Applications: webhooks, verb validation and the verb runner for one call."""
