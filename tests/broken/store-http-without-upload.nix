# expect: instances.web-1.store: http://cache:8080 is an HTTP binary cache: say how nix-hive writes to it
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; store = "http://cache:8080"; };
}
