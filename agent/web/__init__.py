"""The operator's page (`[web]`, off by default): the last part, its verdict and the station's
health in a browser, updated live over server-sent events. Standard library only."""
