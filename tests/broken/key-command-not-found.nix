# expect: keys.db-password.keyCommand: no-such-password-manager: command not found
{
  keys.db-password = { keyCommand = [ "no-such-password-manager" "show" "db" ]; };
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; };
}
