"""User-facing shells that put relay messages in front of a model.

The MCP server and the Claude Code hooks live here. Whatever they show a model
goes through :mod:`ccc_relay.integrations.fence`, the one place that decides
how another agent's message is framed so it reads as data, never as an
instruction from the model's user.
"""
