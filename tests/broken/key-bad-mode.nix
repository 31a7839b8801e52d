# expect: keys.db-password.permissions: "rw-r-----" is not an octal mode
{
  keys.db-password = { text = "x"; permissions = "rw-r-----"; };
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; };
}
