"""The sports-betting demo: stadium scoreboards (MQTT), an odds engine and a bet processor (Kafka
clients), and a web page served by the bridge. ``edgebridge demo`` starts it all; docs/demo.md
explains what to look at."""
