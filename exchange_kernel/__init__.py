"""exchange-kernel: durable order intents on Temporal and ccxt."""
