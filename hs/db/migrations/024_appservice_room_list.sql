-- Application services' published room directories (PUT /directory/list/appservice/{networkId}/{roomId}):
-- one list per service (its registration `id`) and third-party network, shown by /publicRooms with
-- `third_party_instance_id` "<service id>|<network id>" or `include_all_networks` (Synapse's table).
CREATE TABLE appservice_room_list (
    appservice_id TEXT NOT NULL,
    network_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (appservice_id, network_id, room_id)
);
CREATE INDEX appservice_room_list_room ON appservice_room_list (room_id);
