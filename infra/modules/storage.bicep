// The Functions host's storage account: the deployment package container, the host's own blobs
// (AzureWebJobsStorage), the ledger tables, the work queue (and its poison queue) and the Event
// Grid dead-letter container. Reached
// through Entra ID only: shared keys are off.
@description('Name of the storage account (st<token>).')
param name string

@description('Region.')
param location string

@description('Tags.')
param tags object

@description('Container that holds the Flex Consumption deployment package.')
param deploymentContainerName string

@description('Container Event Grid dead-letters undeliverable events to (read back with `python -m remediation replay`).')
param deadLetterContainerName string

@description('The work queue (REMEDIATION_WORK_QUEUE); the host moves messages that keep failing to <name>-poison.')
param workQueueName string = 'remediation-work'

@description('Principal id of the app\'s user-assigned identity.')
param identityPrincipalId string

@description('Object id of the operator who may read dead-lettered events. Empty: nobody.')
param operatorPrincipalId string = ''

@description('Principal type of operatorPrincipalId.')
param operatorPrincipalType string = 'User'

// Built-in role definition ids (learn.microsoft.com, Azure built-in roles).
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'

// The tables of remediation/ledger/tables.py (it also creates them if missing).
var ledgerTables = [
  'healertargets'
  'healerevents'
  'healeroutcomes'
  'healerrefreshes'
  'healeraccounts'
]

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  #checkov:skip=CKV_AZURE_35:Default network action stays Allow: Flex Consumption without VNet integration has no fixed outbound addresses to allow-list; every request needs an Entra ID token (shared keys are off).
  #checkov:skip=CKV_AZURE_59:Public network access stays on: Flex Consumption without VNet integration reaches storage over its public endpoint; access needs an Entra ID token of the app's identity (shared keys are off).
  #checkov:skip=CKV_AZURE_206:Replication: LRS is enough; the package is re-deployable, dead-letters are a copy, and the ledger is rebuilt by the sweep (a lost ledger only costs one reconciliation).
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      // Flex Consumption without VNet integration has no fixed outbound addresses to allow.
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }

  resource blobService 'blobServices' = {
    name: 'default'

    resource deploymentContainer 'containers' = {
      name: deploymentContainerName
      properties: {
        publicAccess: 'None'
      }
    }

    resource deadLetterContainer 'containers' = {
      name: deadLetterContainerName
      properties: {
        publicAccess: 'None'
      }
    }
  }

  resource tableService 'tableServices' = {
    name: 'default'
  }

  resource queueService 'queueServices' = {
    name: 'default'

    resource workQueue 'queues' = {
      name: workQueueName
    }

    resource poisonQueue 'queues' = {
      name: '${workQueueName}-poison'
    }
  }
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for table in ledgerTables: {
  parent: account::tableService
  name: table
}]

// Blob Data Owner on the account: the Functions host's blob use (deployment package, timer
// locks, host keys) needs it (Microsoft's Flex Consumption samples grant exactly this).
resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, identityPrincipalId, storageBlobDataOwner)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Table Data Contributor on the account: the ledger's four tables (it creates them if missing,
// which is an account-level operation).
resource tableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, identityPrincipalId, storageTableDataContributor)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributor)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Queue Data Contributor on the account: the app sends to the work queue (remediation/inbound/workqueue.py),
// and the host's queue trigger reads, hides, deletes and moves poison messages.
resource queueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, identityPrincipalId, storageQueueDataContributor)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributor)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The operator reads dead-lettered events, in that container only.
resource operatorReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(account::blobService::deadLetterContainer.id, operatorPrincipalId, storageBlobDataReader)
  scope: account::blobService::deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}

output name string = account.name
output id string = account.id
output blobEndpoint string = account.properties.primaryEndpoints.blob
output tableEndpoint string = account.properties.primaryEndpoints.table
output deadLetterContainerId string = account::blobService::deadLetterContainer.id
