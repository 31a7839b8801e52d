# expect: keys.db-password.keyFile: /
# expect: no such file
{
  keys.db-password = { keyFile = ./no-such-secret; };
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; };
}
