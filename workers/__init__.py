"""hookdrop workers: the batcher (files to chunks of alerts) and the notifier (webhook calls)."""
