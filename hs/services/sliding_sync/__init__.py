"""Sliding sync (MSC4186): requests in both shapes (request.py), connections and positions
(connections.py), room lists (room_list.py), room entries (room_data.py), the service that computes
and long-polls (service.py) and the extensions (extensions.py)."""
