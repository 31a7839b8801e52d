# expect: keys.db-password.destination: "keys/db" is not an absolute file name on the host
{
  keys.db-password = { text = "x"; destination = "keys/db"; };
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; };
}
