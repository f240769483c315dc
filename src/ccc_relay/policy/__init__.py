"""Pure decisions over a frozen configuration: no I/O beyond reading the config file."""
