"""The token service: authenticated, policy-checked LiveKit join tokens."""
