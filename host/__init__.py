"""The remote: client library, serial transports and the pumpctl command line."""
