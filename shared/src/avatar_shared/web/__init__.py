"""What the HTTP services (token, bundles) share: authentication, the access policy,
JSON errors, client addresses, rate limits per address and caller (over
:mod:`avatar_shared.ratelimit`, which the agent uses too), and health/metrics routes.

Installed with the ``web`` extra of ``avatar-shared``; the agent and actions services do
not carry it.
"""
