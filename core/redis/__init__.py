"""The one Redis base: clients from URLs (`client`), scripts (`lua`), key names (`keys`), and
running scripts and translating outages (`common`)."""
