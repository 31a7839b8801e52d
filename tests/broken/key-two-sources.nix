# expect: keys.db-password: this attribute set is not a key: exactly one of keyFile
{
  keys.db-password = { text = "x"; keyCommand = [ "pass" "show" "db" ]; };
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; keys = [ "db-password" ]; };
}
