"""Stand-ins for vendors: real servers on loopback, never mocks."""
