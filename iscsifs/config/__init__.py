"""open-iscsi's configuration, in our own config dir (no I/O beyond small files).

    locations.py      where it lives: default_config_dir(), /etc/iscsi
    keys.py           every key and the check its value passes; names and addresses as values
    conffile.py       key = value files: parse, render, write atomically
    settings.py       NodeSettings / DiscoverySettings: typed settings with open-iscsi defaults
    initiatorname.py  initiatorname.iscsi and new initiator names (iscsi-iname)
    nodedb.py         the node and discovery record database (NodeDB, NodeRecord)
"""
