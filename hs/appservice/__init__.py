"""Application services (bridges and bots): registrations, acting as the service, transactions."""
