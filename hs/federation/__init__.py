"""The Server-Server API: how hs talks to other homeservers.

`client` sends signed requests to other servers (discovery, TLS, IP range filtering); `keys` holds
the server's own keys and fetches, caches and checks other servers'; `request_auth` verifies inbound
requests' X-Matrix signatures; the event handling modules take remote events into the room DAG.
"""
