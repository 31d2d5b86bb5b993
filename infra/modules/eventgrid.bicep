// The custom topic for refresh-failure events (PowerBI.RefreshFailed), and the dead-letter rights
// of both topics. The subscriptions themselves: infra/subscriptions.bicep (after the code deploy).
@description('Region.')
param location string

@description('Tags.')
param tags object

@description('Name of the custom topic (evgt-...).')
param customTopicName string

@description('Storage account that holds the dead-letter container.')
param storageAccountName string

@description('Dead-letter container name.')
param deadLetterContainerName string

@description('Principal id of the Key Vault system topic\'s identity (it dead-letters too).')
param systemTopicPrincipalId string

@description('Object ids allowed to publish to the custom topic (EventGrid Data Sender on it).')
param senderPrincipalIds array = []

var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var eventGridDataSender = 'd5a91429-5739-47e2-a06b-3470a27159e7'

resource customTopic 'Microsoft.EventGrid/topics@2022-06-15' = {
  #checkov:skip=CKV_AZURE_193:Public network access stays on: refresh-failure publishers (pipelines, Logic Apps, monitoring jobs) run outside any VNet; publishing needs an Entra ID token with EventGrid Data Sender (local auth is off).
  name: customTopicName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    inputSchema: 'EventGridSchema'
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
    minimumTlsVersionAllowed: '1.2'
  }
}

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName

  resource blobService 'blobServices' existing = {
    name: 'default'

    resource deadLetterContainer 'containers' existing = {
      name: deadLetterContainerName
    }
  }
}

// Each topic's identity may write blobs into the dead-letter container, and nowhere else.
resource customTopicDeadLetter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account::blobService::deadLetterContainer.id, customTopic.id, storageBlobDataContributor)
  scope: account::blobService::deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: customTopic.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource systemTopicDeadLetter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account::blobService::deadLetterContainer.id, systemTopicPrincipalId, storageBlobDataContributor)
  scope: account::blobService::deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: systemTopicPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource senders 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in senderPrincipalIds: {
  name: guid(customTopic.id, principalId, eventGridDataSender)
  scope: customTopic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventGridDataSender)
    principalId: principalId
  }
}]

output customTopicName string = customTopic.name
output customTopicId string = customTopic.id
output customTopicEndpoint string = customTopic.properties.endpoint
