# expect: instances.www-2.system: "wwww" is not a system
{
  systems.www = { configuration = { }; };
  instances.www-1 = { system = "www"; };
  instances.www-2 = { system = "wwww"; };
}
