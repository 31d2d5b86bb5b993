// The app's one identity: a user-assigned managed identity (it exists before the app, so every
// role assignment is in place when the host starts, and it survives a re-created app).
@description('Name of the identity (id-<token>).')
param name string

@description('Region.')
param location string

@description('Tags.')
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
