# expect: must evaluate to an attribute set with systems and instances
[ { systems.web = { configuration = { }; }; } ]
