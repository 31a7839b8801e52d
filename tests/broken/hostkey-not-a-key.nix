# expect: instances.web-1.hostKey: "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s" is not a public host key
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; hostKey = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"; };
}
