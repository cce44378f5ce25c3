"""The simulated pump firmware: delivery, limits, storage, audit, front panel, UART."""
