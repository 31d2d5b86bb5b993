// Step 3 of `azd up` (the postdeploy hook runs it; see infra/hooks/postdeploy.sh): the Event Grid
// subscriptions. Deployed into the app resource group; the Key Vault one goes to the vault's group.
// It runs only after the code is deployed: a subscription to an Azure Function endpoint is
// validated against the function, which must exist.
targetScope = 'resourceGroup'

@description('Resource id of the function app (output AZURE_FUNCTION_APP_ID).')
param functionAppId string

@description('Name of the Key Vault system topic (output KEY_VAULT_SYSTEM_TOPIC_NAME).')
param keyVaultSystemTopicName string

@description('Resource group of the vault and its system topic (output KEY_VAULT_RESOURCE_GROUP).')
param keyVaultResourceGroupName string

@description('Name of the refresh-failure custom topic in this resource group (output REFRESH_EVENTS_TOPIC_NAME).')
param refreshEventsTopicName string

@description('Resource id of the storage account holding the dead-letter container (output AZURE_STORAGE_ACCOUNT_ID).')
param storageAccountId string

@description('Dead-letter container (output DEAD_LETTER_CONTAINER_NAME).')
param deadLetterContainerName string

@minValue(1)
@maxValue(30)
@description('Delivery attempts before an event is dead-lettered.')
param maxDeliveryAttempts int = 30

@minValue(1)
@maxValue(1440)
@description('Minutes an event is retried before it is dead-lettered.')
param eventTimeToLiveInMinutes int = 1440

var delivery = {
  eventDeliverySchema: 'EventGridSchema'
  retryPolicy: {
    maxDeliveryAttempts: maxDeliveryAttempts
    eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
  }
  // Written with the topic's own system-assigned identity (Storage Blob Data Contributor on the
  // container only); read back with `python -m remediation replay FILE` (docs/deploy.md).
  deadLetterWithResourceIdentity: {
    identity: {
      type: 'SystemAssigned'
    }
    deadLetterDestination: {
      endpointType: 'StorageBlob'
      properties: {
        resourceId: storageAccountId
        blobContainerName: deadLetterContainerName
      }
    }
  }
}

module keyVaultSubscription 'modules/keyvault-subscription.bicep' = {
  name: 'keyvault-events-subscription'
  scope: resourceGroup(keyVaultResourceGroupName)
  params: {
    systemTopicName: keyVaultSystemTopicName
    functionResourceId: '${functionAppId}/functions/keyvault_events'
    delivery: delivery
  }
}

resource refreshTopic 'Microsoft.EventGrid/topics@2022-06-15' existing = {
  name: refreshEventsTopicName
}

resource refreshSubscription 'Microsoft.EventGrid/topics/eventSubscriptions@2022-06-15' = {
  parent: refreshTopic
  name: 'evgs-refresh-events'
  properties: union(delivery, {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionAppId}/functions/refresh_events'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: [
        'PowerBI.RefreshFailed'
        'Microsoft.Fabric.ItemJobFailed'
        'Microsoft.Fabric.JobEvents.ItemJobFailed'
      ]
    }
  })
}

output keyVaultSubscriptionId string = keyVaultSubscription.outputs.id
output refreshSubscriptionId string = refreshSubscription.id
