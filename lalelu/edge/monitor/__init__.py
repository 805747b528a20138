"""The monitor page of the edge: the loop fills a feed in shared memory (feed.py), the monitor's own
process serves it (server.py, static/), and `MonitorProcess` starts and stops that process."""
