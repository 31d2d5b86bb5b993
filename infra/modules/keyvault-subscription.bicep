// The Key Vault system topic's subscription to the keyvault_events function (vault's resource group).
@description('Name of the Key Vault system topic.')
param systemTopicName string

@description('Resource id of the keyvault_events function (<site id>/functions/keyvault_events).')
param functionResourceId string

@description('eventDeliverySchema, retryPolicy and deadLetterWithResourceIdentity, shared with the refresh subscription.')
param delivery object

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: systemTopicName
}

resource subscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: systemTopic
  name: 'evgs-keyvault-events'
  properties: union(delivery, {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: functionResourceId
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.KeyVault.SecretNewVersionCreated'
        'Microsoft.KeyVault.SecretNearExpiry'
        'Microsoft.KeyVault.SecretExpired'
      ]
    }
  })
}

output id string = subscription.id
