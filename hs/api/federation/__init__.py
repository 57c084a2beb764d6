"""Handlers of `/_matrix/federation/*` and `/_matrix/key/*`: they parse and answer; the protocol logic
is in hs/federation/."""
