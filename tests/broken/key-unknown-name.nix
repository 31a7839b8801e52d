# expect: systems.web.keys[1]: "db-pasword" is not a key of key-unknown-name.nix (keys: db-password)
{
  keys.db-password = { text = "x"; };
  systems.web = { configuration = { }; keys = [ "db-password" "db-pasword" ]; };
  instances.web-1 = { system = "web"; };
}
