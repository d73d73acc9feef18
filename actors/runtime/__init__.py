"""The shared runtime every actor process runs on: addressing, the mailbox (ZeroMQ
transport), the actor loop, the launcher, logging and process hygiene."""
