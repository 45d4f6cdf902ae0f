"""The host side: the driver (host scripts built from register writes), vNPUs placed on a
device, the allocator that sizes them, load generators, and running compiled programs."""
