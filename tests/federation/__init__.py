"""Federation tests: hs against a real Synapse and against another hs, over verified TLS on loopback."""
